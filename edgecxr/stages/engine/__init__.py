"""The build stage: TensorRT engines for this GPU from the FP16 or Q/DQ INT8 ONNX, with their sidecars."""
