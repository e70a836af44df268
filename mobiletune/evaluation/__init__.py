"""How good a model is: metrics, plots and the HTML report, and the evaluate job."""
