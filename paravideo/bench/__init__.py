"""`paravideo bench`: a sweep of real runs (lengths x rank counts x plans) described by one YAML file,
measured against the cost model's predictions, written as report.md / report.json and plots. It
drives the runtime like a user would; the runtime never imports it."""
