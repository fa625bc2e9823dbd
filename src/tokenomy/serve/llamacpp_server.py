"""llama-cpp-python's OpenAI server with the CPU repacking switch off.

    python -m tokenomy.serve.llamacpp_server --model MODEL.gguf --port 8001 [...]

takes the same arguments as `python -m llama_cpp.server`. llama.cpp's extra CPU buffer
types segfault on the AMX CPUs seen here, and the server has no flag for them, so the
default model params are patched before the server loads the model.
"""

from __future__ import annotations


def main() -> None:
    import llama_cpp.llama_cpp as C
    from llama_cpp.server.__main__ import main as serve

    original = C.llama_model_default_params

    def no_extra_buffer_types():
        params = original()
        params.use_extra_bufts = False
        return params

    C.llama_model_default_params = no_extra_buffer_types
    serve()


if __name__ == "__main__":
    main()
