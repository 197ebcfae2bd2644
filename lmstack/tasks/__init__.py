"""What adaptation and evaluation share: the chat template (`chat_template`), the verifiable tasks with their
verifiers (`verifiable`, registered components of kind `task`), and greedy or sampled answers scored by them
(`answers`)."""
