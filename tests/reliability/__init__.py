"""The reliability suite: crash loop, stops, faults, hostile inputs (``make reliability``)."""
