"""Scene glue of the MedSeg Slicer module: MRML nodes <-> ``medseg`` core objects.

Nothing here computes on images; it converts, runs the core (in this process or as a child
``medseg`` process), imports its output folder off-scene and commits it to the scene in one step.
"""
