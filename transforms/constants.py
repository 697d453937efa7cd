"""Names shared by many steps, in one small module everyone imports (and that imports nothing of ours)."""

# Vector length per model (marengo3.5's can be chosen: 128, 256 or 512).
MODEL_DIMS = {"marengo3.0": 512, "marengo3.5": 512, "marengo2.7": 1024, "Marengo-retrieval-2.7": 1024}
# Output tags of the steps that can reject or postpone what they were given.
DEAD_LETTERS = "dead_letters"
DEFERRED = "deferred"
# The Beam metrics namespace of every counter the job keeps.
NAMESPACE = "tl_embed"
