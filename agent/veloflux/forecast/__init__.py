"""Load forecasting per pool: a regular series of its request rate, seasonal methods
judged against the seasonal naive forecast, intervals, and server-count recommendations."""
