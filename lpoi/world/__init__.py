"""A miniature of the paper's experiment: a procedurally drawn world where a tiny VLM can learn to see.

``scenes`` draws the world (objects, occlusion, boxes, masks, co-occurrence), ``dataset`` writes its
splits and AMBER-format benchmarks, ``model`` builds and pretrains the base VLM, ``hide`` erases an
object from a scene (or draws one in) step by step, ``lists`` builds the lists from it, ``grid`` trains and scores
DPO, mDPO and LPOI from the same base over several seeds, ``results`` tabulates and plots them.
"""
