"""The collector's permanent generation: long-lived objects out of full collections.

Importing TensorFlow leaves some 300 000 objects; a full (generation 2)
collection walks them all and stops the event loop for 0.2-1 s. Objects frozen
with `gc.freeze` are never walked: `freeze` after startup and after each model
version loads, `refreeze` once a closed version's frozen graph must go.
"""

from __future__ import annotations

import gc
import logging
import time

logger = logging.getLogger("asyncsess.serve")


def freeze(why: str) -> int:
    """Collect the garbage, then freeze every object left; how many were frozen now.

    The collection walks only objects not frozen yet, so after the first call
    it costs what was allocated since (a new model version's graph).
    """
    before = gc.get_freeze_count()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.debug("Froze %d objects %s (%d frozen in all)", frozen - before, why, frozen)
    return frozen - before


def refreeze(why: str) -> int:
    """Unfreeze, collect everything, freeze again; how many objects were collected.

    Frozen objects are never collected, so the reference cycles of something
    frozen that has since been dropped (a closed model version's graph) are
    released only so. This is a full collection: the loop stops for as long
    (0.2-1 s with TensorFlow loaded); call it when that hurts least.
    """
    started = time.perf_counter()
    gc.unfreeze()
    collected = gc.collect()
    gc.freeze()
    logger.info(
        "Collected %d objects %s in %.0f ms (%d frozen again)",
        collected,
        why,
        (time.perf_counter() - started) * 1e3,
        gc.get_freeze_count(),
    )
    return collected


def unfreeze(why: str) -> None:
    """Hand the frozen objects back to the collector (no collection now)."""
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    if frozen:
        logger.debug("Unfroze %d objects %s", frozen, why)
