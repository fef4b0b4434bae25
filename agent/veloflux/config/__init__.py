"""The configuration: the schema (pydantic), its value types, and loading (YAML,
environment overrides, problem paths).
"""
