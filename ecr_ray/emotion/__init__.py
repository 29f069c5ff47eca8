"""ECR step 1: user emotions (labels, LLM annotation, teacher, classifier, inference)."""
