"""The command-line tools, one module each, run as python -m gasca_core.<tool>:

    train       train a GASCA model (GANGGLW by default)
    evaluate    a checkpoint's test-set report and image grid
    compare     GANGGLW vs joint vs plain greedy, several seeds, equal updates and equal time
    classify    the trained encoder as pre-training for a classifier
    frontalize  apply a trained G to your own image files

common.py holds what they share: flag types, the data and architecture flags, and the one
place where flags become a GascaConfig.
"""
