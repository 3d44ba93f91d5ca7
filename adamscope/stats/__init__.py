"""The statistics engine: Adam's u and r, mergeable sketches, bimodality and the theory's stages.

`engine.summarize(ts, cfg)` streams one TensorState into a `sketch.TensorSketch`;
`engine.merge_layer(sketches)` summarises a layer; `stages.classify(row)` names its stage.
"""
