import time


def run(data, zone):
    time.sleep(float(data.split(b":")[0] or 0))
    return data
