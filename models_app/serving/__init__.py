"""The serving core: runners and what they run on. Imports no Django and no app (docs/ARCHITECTURE.md)."""
