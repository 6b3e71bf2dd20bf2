"""keras-hub presets by handle or folder (kerasllm/hub.py): names, loading failures in one line, offline refusals."""






