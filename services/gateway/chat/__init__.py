"""The assistant: POST /api/chat runs a language model that explores the schema and runs execute_query.

Modules: `prompt` (everything the model is told), `model` (the streamed model client),
`chat_request` (the posted body, and its UIMessages into model messages), `tools` (execute_query, describe_schema),
`ui` (the UI message stream parts), `turn` (the loop of one turn), `handlers` (HTTP).
"""
