"""The whole VLA: vision towers, projector, image preprocessing and the policy over the LLM backbone.

`load_vla(path)` reads an OpenVLA / Prismatic checkpoint and returns a `VLAPolicy` (image + instruction ->
action); `build_vla(llm_id, vision_id)` assembles a new one to train from scratch. The layer sits above
`persistence` (it loads the LLM half through `load_vla_backbone`).
"""
