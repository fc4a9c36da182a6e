"""HTTP delivery layer: maps requests onto relightq's services."""
