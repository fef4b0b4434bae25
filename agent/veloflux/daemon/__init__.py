"""The long-lived service: scheduling and signals, the HTTP API, metrics, operator
controls, audit, the training job.
"""
