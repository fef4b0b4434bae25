"""The frozen values every layer passes: the observation, the advice, the weight plan."""
