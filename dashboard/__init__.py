"""The Streamlit health dashboard over the monitor daemon and Prometheus."""
