def run(data, zone):
    return data
