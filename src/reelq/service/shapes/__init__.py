"""The other API surfaces' shapes (OpenAI Videos, the Vidu platform), mapped onto the task surface.

Plain data and mappings, no service and no HTTP: each surface's transport (api/openai.py,
api/vidu_platform.py) imports its module `as shapes` and calls `TaskService` itself.
"""
