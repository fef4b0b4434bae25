"""The sim package: the discrete-event simulator, its scenarios, dispatchers and weight
strategies.
"""
