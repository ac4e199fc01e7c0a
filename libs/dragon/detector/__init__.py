"""Fault detection: a Generative Optimization Network (GON) scores windows, POT labels them.

The detector follows DRAGON (Tuli et al., TNSM 2022, sec. IV-B/C and V-A/B) in its first,
topology-free form: a discriminator ``D`` over a time-series window (``gon``), the next window
reconstructed by gradient ascent on ``log D`` from the current one (window initialisation), an
upward-deviation fault score (eq. 13), and Peaks-Over-Threshold labels (``pot``). ``scaling``,
``checkpoint`` and ``train`` turn a raw training series into one self-describing checkpoint.

Importing this package has no side effects and does not import torch; import the modules.
"""
