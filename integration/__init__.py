"""The local stack: demo backends, load generator and HAProxy launcher."""
