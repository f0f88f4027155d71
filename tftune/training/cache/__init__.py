"""Frozen-prefix feature cache: run a stage's frozen bottom once, train the rest on its outputs.

In a stage that trains the head and the top N layer groups, every epoch pushes each example
through the same frozen bottom of the network and gets the same activations (frozen layers run
in inference mode, as frozen BatchNorm does in Keras 3). `plan_cache` cuts the classifier's
Keras graph where the frozen part ends: the *prefix* maps the model inputs to the activations at
that boundary (the pooled features in a head-only stage; the input of the lowest trained block
in a `top:N` stage, plus anything else the rest needs such as the padding mask), and the
*suffix* is a `keras.Model` from those activations to the classifier's output that shares its
layers (and so its weights) with the classifier. `FeatureCache` computes the prefix once per
split, keeps the outputs in memory up to a byte budget and spills to `tf.data` shards on disk
beyond it, and serves them in the same order and batches as the uncached pipeline would.

Exact when the input pipeline has no random augmentation; the frozen part's own dropout (e.g.
inside or between frozen transformer blocks) is off, which is what `training=False` means for
it. The head's dropout stays where it was, in the trained part.
"""

from tftune.training.cache.plan import CachedSuffix, CachePlan, plan_cache
from tftune.training.cache.store import FILL_BLOCK, FeatureCache, batched, cached_datasets

__all__ = ["FILL_BLOCK", "CachePlan", "CachedSuffix", "FeatureCache", "batched",
           "cached_datasets", "plan_cache"]
