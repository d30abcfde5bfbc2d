"""Storyboards: N keyframes planned as N-1 transitions, and their clips made into films.

The flow (``kf2v_flows.storyboard``) composes these with the batch; the logic lives here.
"""
