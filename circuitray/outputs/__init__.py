"""What leaves circuitray for people: the HTML report (:mod:`.report`) and graphs in
circuit-tracer's viewer format with a local viewer server (:mod:`.export`)."""
