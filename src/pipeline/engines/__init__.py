"""What runs a model: hf (transformers, placed by the plan), openai (an OpenAI-compatible server), vllm (a vLLM
server the stage starts and stops). One small interface, `base.Engine`; the stages build prompts, write records and
resume the same way whichever engine answers them."""
