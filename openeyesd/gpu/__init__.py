"""The GPU profile's backends: InsightFace landmarks through onnxruntime, the inpainting
generator and the face restorer.

Heavy imports (onnxruntime, torch, diffusers) live only in this package's modules, never in
this ``__init__``: importing ``openeyesd.gpu`` costs nothing, and the CPU profile, the watcher
and ``openeyesctl`` never import the modules below it. A factory imports the module it needs
when the config asks for the GPU profile.
"""
