"""What leaves circuitray for people: the HTML report (:mod:`.report`), graphs in
circuit-tracer's viewer format (:mod:`.export`) and circuitray's offline viewer that
serves them (:mod:`.viewer`, assets in ``static/``)."""
