/// The API this server implements, as an OpenAPI 3.0 document (served at `/openapi.yaml`; the
/// schemathesis pass in `scripts/test-server.sh` fuzzes the server against it).
enum OpenAPIDocument {
    static let text = #"""
openapi: 3.0.3
info:
  title: Farside OpenAI-compatible API
  version: "1"
  description: Chat and text completions, models, health and metrics of a Farside coordinator.
paths:
  /v1/chat/completions:
    post:
      operationId: createChatCompletion
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/ChatCompletionRequest"}
      responses:
        "200":
          description: A completion (JSON), or Server-Sent Events chunks when stream is true.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/ChatCompletion"}
            text/event-stream:
              schema: {type: string}
        "400": {$ref: "#/components/responses/Error"}
        "401": {$ref: "#/components/responses/Error"}
        "404": {$ref: "#/components/responses/Error"}
        "413": {$ref: "#/components/responses/Error"}
        "503": {$ref: "#/components/responses/Error"}
  /v1/completions:
    post:
      operationId: createCompletion
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/CompletionRequest"}
      responses:
        "200":
          description: A completion (JSON), or Server-Sent Events chunks when stream is true.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Completion"}
            text/event-stream:
              schema: {type: string}
        "400": {$ref: "#/components/responses/Error"}
        "401": {$ref: "#/components/responses/Error"}
        "404": {$ref: "#/components/responses/Error"}
        "413": {$ref: "#/components/responses/Error"}
        "503": {$ref: "#/components/responses/Error"}
  /v1/models:
    get:
      operationId: listModels
      responses:
        "200":
          description: The served model.
          content:
            application/json:
              schema:
                type: object
                required: [object, data]
                properties:
                  object: {type: string, enum: [list]}
                  data: {type: array, items: {$ref: "#/components/schemas/Model"}}
        "401": {$ref: "#/components/responses/Error"}
  /v1/models/{model}:
    get:
      operationId: retrieveModel
      parameters:
        - {name: model, in: path, required: true, schema: {type: string}}
      responses:
        "200":
          description: The model.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Model"}
        "401": {$ref: "#/components/responses/Error"}
        "404": {$ref: "#/components/responses/Error"}
  /health:
    get:
      operationId: health
      responses:
        "200":
          description: Every layer's experts are placed; requests are served.
          content:
            application/json:
              schema: {type: object, properties: {status: {type: string}}}
        "503":
          description: Still starting.
          content:
            application/json:
              schema: {type: object, properties: {status: {type: string}}}
  /metrics:
    get:
      operationId: metrics
      responses:
        "200":
          description: Prometheus text exposition.
          content:
            text/plain:
              schema: {type: string}
components:
  responses:
    Error:
      description: An error in OpenAI's shape.
      content:
        application/json:
          schema: {$ref: "#/components/schemas/Error"}
  schemas:
    Error:
      type: object
      required: [error]
      properties:
        error:
          type: object
          required: [message, type]
          properties:
            message: {type: string}
            type: {type: string}
            param: {type: string, nullable: true}
            code: {type: string, nullable: true}
    Model:
      type: object
      required: [id, object, owned_by]
      properties:
        id: {type: string}
        object: {type: string, enum: [model]}
        created: {type: integer}
        owned_by: {type: string}
        max_model_len: {type: integer}
    Message:
      type: object
      required: [role]
      properties:
        role: {type: string, enum: [system, developer, user, assistant, tool]}
        content:
          nullable: true
          oneOf:
            - {type: string}
            - type: array
              items:
                type: object
                required: [type, text]
                properties:
                  type: {type: string, enum: [text]}
                  text: {type: string}
    Sampling:
      type: object
      properties:
        model: {type: string}
        max_tokens: {type: integer, minimum: 1, nullable: true}
        temperature: {type: number, minimum: 0, maximum: 2, nullable: true}
        top_p: {type: number, exclusiveMinimum: true, minimum: 0, maximum: 1, nullable: true}
        top_k: {type: integer, minimum: -1}
        seed: {type: integer, nullable: true}
        n: {type: integer, minimum: 1, maximum: 1}
        stop:
          nullable: true
          oneOf:
            - {type: string, minLength: 1}
            - {type: array, maxItems: 4, items: {type: string, minLength: 1}}
        stream: {type: boolean, nullable: true}
        stream_options:
          type: object
          nullable: true
          properties:
            include_usage: {type: boolean}
        ignore_eos: {type: boolean}
    ChatCompletionRequest:
      allOf:
        - {$ref: "#/components/schemas/Sampling"}
        - type: object
          required: [messages]
          properties:
            messages: {type: array, minItems: 1, items: {$ref: "#/components/schemas/Message"}}
            max_completion_tokens: {type: integer, minimum: 1, nullable: true}
            logprobs: {type: boolean, nullable: true}
            top_logprobs: {type: integer, minimum: 0, maximum: 20, nullable: true}
    CompletionRequest:
      allOf:
        - {$ref: "#/components/schemas/Sampling"}
        - type: object
          required: [prompt]
          properties:
            prompt:
              oneOf:
                - {type: string, minLength: 1}
                - {type: array, minItems: 1, items: {type: integer, minimum: 0}}
            logprobs: {type: integer, minimum: 0, maximum: 5, nullable: true}
    Usage:
      type: object
      required: [prompt_tokens, completion_tokens, total_tokens]
      properties:
        prompt_tokens: {type: integer}
        completion_tokens: {type: integer}
        total_tokens: {type: integer}
        prompt_tokens_details:
          type: object
          properties:
            cached_tokens: {type: integer}
    ChatCompletion:
      type: object
      required: [id, object, created, model, choices, usage]
      properties:
        id: {type: string}
        object: {type: string, enum: [chat.completion]}
        created: {type: integer}
        model: {type: string}
        choices:
          type: array
          items:
            type: object
            required: [index, message, finish_reason]
            properties:
              index: {type: integer}
              message:
                type: object
                required: [role, content]
                properties:
                  role: {type: string}
                  content: {type: string}
              logprobs: {type: object, nullable: true}
              finish_reason: {type: string, enum: [stop, length]}
        usage: {$ref: "#/components/schemas/Usage"}
    Completion:
      type: object
      required: [id, object, created, model, choices, usage]
      properties:
        id: {type: string}
        object: {type: string, enum: [text_completion]}
        created: {type: integer}
        model: {type: string}
        choices:
          type: array
          items:
            type: object
            required: [index, text, finish_reason]
            properties:
              index: {type: integer}
              text: {type: string}
              logprobs: {type: object, nullable: true}
              finish_reason: {type: string, enum: [stop, length]}
        usage: {$ref: "#/components/schemas/Usage"}
"""#
}
