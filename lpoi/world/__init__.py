"""A miniature of the paper's experiment: a procedurally drawn world where a tiny VLM can learn to see.

``scenes`` draws the world (objects, occlusion, boxes, masks, co-occurrence), ``dataset`` writes its
splits and AMBER-format benchmarks, ``model`` builds and pretrains the base VLM, ``hide`` erases an
object from a scene (or draws one in) step by step, ``lists`` builds the lists from it, ``study`` tunes every
method alike on validation scenes and tests the selected configurations over bases and seeds (on ``pool``'s
worker processes), ``stats`` holds the bootstrap and the selection rule, ``results`` and ``readme`` report.
"""
