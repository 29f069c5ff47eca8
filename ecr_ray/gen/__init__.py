"""ECR step 3: emotion-aligned response generation."""
