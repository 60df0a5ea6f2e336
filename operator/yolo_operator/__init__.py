"""yolo-v7's Kubernetes operator: YoloDetector custom resources → KServe InferenceServices.

Modules: ``config`` (constants, settings from the environment), ``manifests`` (pure builders),
``validation`` (pure cross-field checks), ``kube`` (the API calls), ``handlers`` (kopf), ``__main__`` (CLI).
"""

__version__ = "1.0.0"
