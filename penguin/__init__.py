"""The penguin classifier's own code, shared by training and serving, one purpose per module:

    features     the input schema, feature names and request limits
    recipes      how each model version is trained (training only)
    onnx_export  the fitted pipeline as an exact float64 ONNX graph (training only)
    parity       the rows and the comparison that prove the graph answers like the pipeline
    predictor    what the service predicts with: onnxruntime, the pipeline, or a constant (bench floor)
    web          the service's HTTP edges: version header, body guard, one-line logs, OpenAPI document
    archive      MODEL_PATH: serve an exported model archive

The canary tool (`canary_kit`) never imports this package: it knows a model only through its settings.
"""
