"""From readings to a plan: the advisor, the optimizer, the outlier guard and the planner
with its safety rules.
"""
