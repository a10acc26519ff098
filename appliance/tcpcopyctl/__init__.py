"""tcpcopyctl, the operator's command: status, pause/resume/set, doctor, keygen."""
