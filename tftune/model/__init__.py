"""The model: backbones (spec string -> pretrained network, preprocessing, layer groups) and heads."""
