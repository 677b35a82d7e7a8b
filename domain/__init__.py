"""Pure domain model: SOPs and work sessions.

Imports nothing from Temporal, FastAPI or SQLAlchemy."""
