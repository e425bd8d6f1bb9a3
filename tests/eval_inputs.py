"""Three golden questions, references and one retrieved chunk each: inputs for evaluation-cache tests."""

from __future__ import annotations

QUESTIONS = ["How much does the Pro plan cost?", "What is the attachment limit?", "Can I export notes?"]
REFERENCES = ["The Pro plan costs $8 per user per month.", "Attachments can be up to 200 MB.", "Yes, as Markdown."]
CONTEXTS = [[{"chunk_id": f"doc-{i}:0", "doc_id": f"doc-{i}", "title": f"Doc {i}", "text": f"Doc {i}\n\n{ref}"}]
            for i, ref in enumerate(REFERENCES)]
