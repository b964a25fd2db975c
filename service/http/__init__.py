"""HTTP routes by job. New routes live here; the older route modules (service/api.py, alerts_api.py,
push_api.py, report_api.py, openapi.py) are to move in later."""
