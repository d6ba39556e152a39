"""modules/call_queue.py: the lock every generation (UI and API) holds while it runs."""

import threading

queue_lock = threading.Lock()
