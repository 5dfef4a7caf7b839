"""Analysis: why forgetting happens. DES (dataset embedding similarity) with its encoders, MPD (model parameter
difference), the forgetting-risk report, and representation geometry (``geometry/``); each module one idea, every
setting read from the profile's ``analysis`` section."""
