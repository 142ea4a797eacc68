"""The TensorRT-LLM backend: prebuilt TensorRT engines through the LLM API.

`config.py` is its settings section (build settings key the engine cache);
`backend.py` is the adapter and the engine builder (`python -m
llenergymeasure.backends.tensorrt build`), both reaching tensorrt_llm lazily."""
