"""The recipe: typed schema, YAML with positions, loading and validation, JSON Schema,
starter recipes."""
