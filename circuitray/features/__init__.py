"""Feature labels and statistics per transcoder set: built from top-activating
contexts (:mod:`.build`), imported from files (:mod:`.labels`), stored and found by
transcoder reference (:mod:`.store`, no torch)."""
