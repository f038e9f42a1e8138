/// The ChatTemplate module owns rendering a model's own Jinja `chat_template` (the subset of
/// Jinja that published templates use) into the prompt text the model was trained on.
enum ChatTemplateModule {}
