"""`adamscope bench`: throughput and memory of analyze against the read floor and a baseline."""
