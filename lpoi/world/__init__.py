"""A miniature of the paper's experiment: a procedurally drawn world where a tiny VLM can learn to see.

``scenes`` draws the world (objects, occlusion, boxes, masks, co-occurrence), ``dataset`` writes its
splits and an AMBER-format benchmark, ``model`` builds and pretrains the base VLM, ``oracle`` is the
detection/segmentation backend that reads the generator's boxes and masks, ``grid`` trains and scores
DPO, mDPO and LPOI from the same base over several seeds, ``results`` tabulates and plots them.
"""
